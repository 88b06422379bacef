import sys

from bench.analysis.report import main

sys.exit(main())
