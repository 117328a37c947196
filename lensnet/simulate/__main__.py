from lensnet.core.errors import cli_exit
from lensnet.simulate.command import main

cli_exit(main)
