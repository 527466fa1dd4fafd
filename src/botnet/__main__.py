import sys

from botnet.cli import main

sys.exit(main())
