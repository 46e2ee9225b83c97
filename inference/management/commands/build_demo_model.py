from pathlib import Path

from django.core.management.base import BaseCommand

from inference.demo_model import build_demo_model  # torch is imported when it builds


class Command(BaseCommand):
    help = (
        "Write a tiny randomly initialised Gemma 3 that the real loading code opens (offline demo)."
    )

    def add_arguments(self, parser):
        parser.add_argument("directory")
        parser.add_argument("--force", action="store_true", help="rebuild even if present")
        parser.add_argument("--hidden-size", type=int, default=None)
        parser.add_argument("--layers", type=int, default=None)

    def handle(self, *args, directory, force, hidden_size, layers, **options):
        out = Path(directory)
        if (out / "config.json").exists() and not force:
            self.stdout.write(f"demo model already at {out}")
            return
        kwargs = {}
        if hidden_size:
            kwargs["hidden_size"] = hidden_size
        if layers:
            kwargs["num_layers"] = layers
        build_demo_model(out, **kwargs)
        self.stdout.write(f"demo model written to {out}")
