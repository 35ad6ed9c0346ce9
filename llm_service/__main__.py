"""``python -m llm_service`` runs ``llm-service`` (``serve`` by default)."""

import sys

from llm_service.cli import main

sys.exit(main())
