#!/usr/bin/env bash
# The stream-protocol tests parse our ai-sdk streams with the AI SDK's own reader (npm's "ai",
# pinned in tests/api/js/package-lock.json); install it there if missing. Needs node >= 18.
set -u
cd "$(dirname "$0")/../tests/api/js" || exit 0
if [ -f node_modules/ai/package.json ]; then exit 0; fi
if ! command -v npm >/dev/null 2>&1; then
  echo "warning: npm not found; the ai-sdk stream tests will fail"
  exit 0
fi
echo "installing the AI SDK for the stream-protocol tests (npm ci)"
npm ci --no-audit --no-fund --loglevel=error >/dev/null 2>&1 \
  || echo "warning: could not install tests/api/js; the ai-sdk stream tests will fail"
exit 0
