import sys

from nanocommander.cli import main

sys.exit(main())
