"""``python -m fastrobust ...`` (also ``deepspeed --module fastrobust train ...``)."""

import sys

from fastrobust.cli import main

sys.exit(main())
