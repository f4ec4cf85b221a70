"""``python -m kernel_connect``: the kernel-connect command."""

import sys

from kernel_connect.cli import main

sys.exit(main())
