"""One module per group of subcommands; each exposes ``add_*`` to register its parsers."""

from .bench_cmd import add_bench_command
from .doctor_cmd import add_doctor_command
from .export_cmd import add_export_commands
from .golden_cmd import add_golden_command
from .model_cmds import add_model_commands
from .report_cmd import add_report_command
from .sample_cmd import add_sample_command
from .serve_cmd import add_serve_command
from .spec_cmds import add_spec_commands
from .tune_cmd import add_tune_command
from .validate_cmd import add_validate_command

__all__ = ["add_bench_command", "add_doctor_command", "add_export_commands", "add_golden_command", "add_model_commands",
           "add_report_command", "add_sample_command", "add_serve_command",
           "add_spec_commands", "add_tune_command", "add_validate_command"]
