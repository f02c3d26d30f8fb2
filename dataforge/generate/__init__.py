"""Generators that grow instruction data: Self-Instruct bootstrap and Evol-Instruct.

Kept import-free so `import dataforge.generate.<module>` stays cheap."""
