"""The playground at /studio: static files shipped in the package (no build step, no CDN)."""
