"""The build pipeline, one module per stage: plan → render → resolve → pack → check (build.py
orchestrates and is the only stage that writes). See docs/architecture.md."""
