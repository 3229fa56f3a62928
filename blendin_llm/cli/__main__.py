"""``python -m blendin_llm.cli``."""

from . import main

main()
