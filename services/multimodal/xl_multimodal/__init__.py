"""XleRobot multimodal service: voice (and optionally an image) in, voice out, through ASR -> LLM -> TTS."""
