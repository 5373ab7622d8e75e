"""The distributed pipeline on Ray: thin adapters around the pure core.

Nothing outside this package (and the CLI) imports ray.
"""

import os

# Ray reads this once, when it is first imported: a local cluster then advertises 127.0.0.1
# instead of the machine's interface address. An existing cluster (RAY_ADDRESS) is unaffected.
if not os.environ.get("RAY_ADDRESS"):
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
