"""End-to-end tests against real processes: JupyterLab, headless Chromium, an OpenID provider."""
