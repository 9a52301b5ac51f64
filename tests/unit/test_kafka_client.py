"""What every Kafka client is configured with, for each security setting (no broker needed)."""
from services.common.kafka import client_config
from services.common.settings import Settings


def test_plaintext_by_default_with_no_credentials() -> None:
    config = client_config(Settings())
    assert config["security.protocol"] == "PLAINTEXT"
    assert not [key for key in config if key.startswith(("sasl.", "ssl."))]


def test_tls_alone_verifies_the_brokers_against_the_given_ca() -> None:
    config = client_config(Settings(kafka_security_protocol="SSL", kafka_ssl_ca_location="/etc/ca.pem"))
    assert (config["security.protocol"], config["ssl.ca.location"]) == ("SSL", "/etc/ca.pem")
    assert not [key for key in config if key.startswith("sasl.")]


def test_sasl_plain_and_scram_over_tls_carry_their_mechanism_and_login() -> None:
    for mechanism in ("PLAIN", "SCRAM-SHA-512"):
        settings = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism=mechanism, kafka_sasl_username="app",
                            kafka_sasl_password="s3cret", kafka_ssl_ca_location="/etc/ca.pem")
        config = client_config(settings)
        assert (config["sasl.mechanisms"], config["sasl.username"], config["sasl.password"]) == (mechanism, "app", "s3cret")
        assert config["ssl.ca.location"] == "/etc/ca.pem"
        assert "s3cret" not in repr(settings)  # secrets stay out of logs that print the settings
