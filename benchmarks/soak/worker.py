"""One part of the soak on one database, in a fresh process:
``python -m benchmarks.soak.worker PART PARAMS_JSON OUT_FILE``.

The database is chosen by the environment (``DATABASE_URL``, ``REDIS_URL``) before Django
starts, and rebuilt and migrated first, as the benchmarks' workers do.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import traceback


def main(part: str, params: str, out: str) -> int:
    from ..db import setup_django, vendor

    started = time.monotonic()
    try:
        setup_django(fresh=True)
        result = importlib.import_module(f"benchmarks.soak.{part}").run(json.loads(params))
        data = {"database": vendor(), **result.as_dict()}
    except Exception:  # noqa: BLE001 (reported in the table, the run goes on)
        data = {"error": traceback.format_exc()[-3000:]}
    data["seconds"] = round(time.monotonic() - started, 1)
    with open(out, "w") as fh:
        json.dump(data, fh, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
