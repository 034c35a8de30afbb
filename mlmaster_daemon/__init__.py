"""mlmaster-daemon: an asyncio daemon that grows ML-Master search trees over ML tasks."""

__version__ = "0.1.0"
API_VERSION = "v1"
