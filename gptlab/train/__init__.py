"""The training loop, its schedule, startup report and telemetry hooks, and sampling."""
