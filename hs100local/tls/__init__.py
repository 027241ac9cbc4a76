"""The cloud listener: ClientHello parsing and fingerprints (hello), certificate (cert),
listener (listener). A plug pins its cloud certificate to TP-Link's private CA, so no
local listener completes a handshake with it; what one can do is read the ClientHello,
fingerprint it (JA3, JA4) for the event log and note the alert the plug sends back.
"""
