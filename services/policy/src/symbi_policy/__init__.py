"""Policy engine: declarative policies compiled to fast evaluators, decided over gRPC."""
