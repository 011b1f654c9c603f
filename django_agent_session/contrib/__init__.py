"""Optional integrations; each module imports a dependency the app does not require."""
