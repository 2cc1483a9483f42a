"""`python -m keras_bidir_cli` runs the `keras-bidir` command."""

import sys

from keras_bidir_cli import main

sys.exit(main())
