"""wapipe's processes: the aiohttp web edge, the CLI, configuration, the Graph API client."""

__version__ = "0.1.0"
