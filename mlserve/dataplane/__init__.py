"""The doors every protocol goes through; `ModelControl` is the one for admin changes."""
