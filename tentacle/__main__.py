import sys

from tentacle.agent.command_line import main

sys.exit(main())
