import sys

from valka.cli.main import main

sys.exit(main())
