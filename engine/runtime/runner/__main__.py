"""`python -m nanocommander.engine.runtime.runner FD`: a runner serving the socket inherited as FD."""

import sys

from nanocommander.engine.runtime.runner.child import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
