"""Generation engines behind the one interface in splitserve.generator.engine."""
