"""`python -m mlserve`.

For `-m`, Python puts the working directory first on sys.path, so a folder there named like a
library (a `triton/`, which torch imports) would shadow the installed one and break the LLM
models. The mlserve package is imported already and finds its own modules through its __path__,
so that entry is dropped before anything else is imported (`python -P -m mlserve` does the same).
"""

import os
import sys

if sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from mlserve.cli import main  # noqa: E402

raise SystemExit(main())
