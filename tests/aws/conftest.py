"""The fixtures of the aws tests: moto behind the EC2 layer (tests/aws/ec2_standin.py)."""

from aws.ec2_standin import ec2, ec2_moto_server

__all__ = ["ec2", "ec2_moto_server"]
