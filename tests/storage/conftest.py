from tests.s3.fixtures import moto_server

__all__ = ["moto_server"]
