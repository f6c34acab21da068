"""What every XleRobot service shares: settings from the environment, fault injection, JSON logs, and the
probes, metrics and limits the deploy strategies rely on. Copied into each image's build context by
roles/image_build, so one copy of this code serves every service."""
