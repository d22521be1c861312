import sys

from tuner.report.cli import main

sys.exit(main())
