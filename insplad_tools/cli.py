"""The ``insplad`` command: a click group whose sub-commands are imported only when used.

Keeping the imports lazy means ``insplad --help`` and the light dataset commands start in a
fraction of a second instead of paying for torch on every call.
"""

from __future__ import annotations

import importlib

import click

from insplad_tools import __version__

# name -> ("module:attribute", short help shown by `insplad --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("insplad_tools.demo:demo", "Run the whole pipeline on generated data (synth -> splits -> train -> leaderboard)."),
    "synth": ("insplad_tools.synth.cli:synth", "Generate a synthetic InsPLAD-det-like raw set of UAV frames and annotations."),
    "build-splits": ("insplad_tools.dataset.cli:build_splits", "Crop annotated assets into an MVTec-AD-layout dataset (InsPLAD-fault/-seg)."),
    "validate": ("insplad_tools.dataset.cli:validate", "Re-check a built dataset against its manifest."),
    "link-crops": ("insplad_tools.dataset.release_cli:link_crops_cmd", "Find the InsPLAD-det frame and box each released InsPLAD-fault crop came from."),
    "audit": ("insplad_tools.dataset.release_cli:audit_cmd", "Report train/test leakage (duplicates, near-duplicates, same frame/tower) of a dataset."),
    "annotations": ("annotations.cli:annotations", "Annotation tools: QA of Roboflow segmentation exports."),
    "benchmark": ("methods.cli:benchmark", "Train and evaluate a method on every category of a dataset."),
    "predict": ("methods.cli:predict", "Score new images with a saved checkpoint."),
    "profile": ("methods.cli:profile", "Trainable parameters, model size and latency of a method."),
    "distill-teacher": ("methods.efficientad.cli:distill_teacher", "Distil an EfficientAD teacher PDN from ResNet-18 features."),
    "export": ("methods.deploy_cli:export", "Export a trained checkpoint's scoring graph to ONNX or OpenVINO."),
    "explain": ("methods.deploy_cli:explain", "Grad-CAM of checkpoints' backbones (and anomaly maps) on images."),
    "report": ("leaderboard.report:report", "One self-contained HTML page for runs: tables, curves, maps, failures."),
    "leaderboard": ("leaderboard.cli:leaderboard", "Score predictions, check submissions and render result tables."),
    "grid": ("insplad_tools.grid.cli:grid", "Run a papers' table as a grid of benchmark trials (local or Ray), resumable, merged."),
}


class LazyGroup(click.Group):
    """A group that imports a sub-command's module the first time it is invoked."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        target, _ = COMMANDS[cmd_name]
        module_name, attr = target.split(":")
        module = importlib.import_module(module_name)
        return getattr(module, attr)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except OSError as exc:  # environment faults (disk full, no permission) are one line, never a traceback
            where = f"{exc.filename}: " if exc.filename else ""
            raise click.ClickException(f"{where}{exc.strerror or exc}") from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_text) for name, (_, help_text) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="insplad")
def main() -> None:
    """insplad: unsupervised anomaly detection for industrial inspection in the wild.

    \b
    Typical flow:
      insplad synth raw/                       # or your own UAV frames + annotations
      insplad build-splits raw/ data/          # InsPLAD-fault layout (+ --masks for -seg)
      insplad benchmark --method differnet --attention se --data data/ --out runs/se
      insplad leaderboard check runs/se --data data/
    """
