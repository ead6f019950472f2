import sys

from tentacle.cli import main

sys.exit(main())
