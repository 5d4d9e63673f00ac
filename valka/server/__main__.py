import sys

from valka.server.main import main

sys.exit(main())
