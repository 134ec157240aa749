// Placeholder so the library has a source until the job formats land.
