import sys

from server_shim.cli.main import main

sys.exit(main())
