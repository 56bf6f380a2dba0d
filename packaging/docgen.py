"""goodsd's man pages and shell completion from this source tree, without installing it:

    python packaging/docgen.py OUTDIR          the same as python -m goodsd.docgen OUTDIR
    python packaging/docgen.py --man-dir DIR   the same as python -m goodsd.docgen --man-dir DIR

The generator is goodsd.docgen (so that an installed goodsd has it too); this script only puts
the source tree first on sys.path, so that the pages describe this tree's code. goodsd's
dependencies come from the running interpreter.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from goodsd.docgen import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
