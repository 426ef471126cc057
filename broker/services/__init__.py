"""Use cases. Each public function owns its transaction; none sees a web request."""
