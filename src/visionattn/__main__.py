import sys

from visionattn.cli import main

sys.exit(main())
