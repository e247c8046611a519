"""``python -m onnxguard`` runs the CLI."""

from onnxguard.cli import main

main()
