"""The fvlm web demo (gradio): `python -m demo` or `fvlm demo`; entry point `demo.app.main(argv)`.

Nothing is imported here, so `import demo.render` stays cheap (gradio loads with demo.app).
"""
