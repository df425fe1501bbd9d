"""The bundled demo: a tiny MobileVLM V2-layout checkpoint trained on rendered shapes, and sample images."""
