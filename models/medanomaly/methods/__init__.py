"""One module per anomaly-detection method. Every module here is imported by the registry on first use, so a new
method is a new file with a `@register("name")` class: the CLI, the server and Slicer list it automatically."""
