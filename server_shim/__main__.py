import sys

from server_shim.cli import main

sys.exit(main())
