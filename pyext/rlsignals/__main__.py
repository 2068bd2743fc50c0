import sys

from rlsignals.cli import main

sys.exit(main())
