"""Session-wide test setup, loaded before any test module imports Ray."""

import os

# Ray reads this when it is first imported: a local test cluster then stays on 127.0.0.1.
if not os.environ.get("RAY_ADDRESS"):
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
