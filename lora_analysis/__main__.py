import sys

from lora_analysis.cli import main

sys.exit(main())
