# -*- test-case-name: tests.test_chain_payments -*-
"""
Payment that every orchestrator understands, on chain or off: the
C{Livepeer-Payment} header's decoding, the refusal, and the off-chain
processor that accepts everything.

Nothing here imports L{livepeer_tx.chain}: an off-chain orchestrator runs
without eth-abi and eth-account (the ticket processor is
L{livepeer_tx.chain.payments.TicketPayments}).
"""

import base64
import binascii
from fractions import Fraction

from google.protobuf.message import DecodeError
from twisted.internet.defer import succeed
from zope.interface import implementer

from livepeer_tx.interfaces import IPaymentProcessor
from livepeer_tx.proto import lp_rpc_pb2


class PaymentError(Exception):
    """
    A payment was refused.

    @ivar status: the HTTP status to answer with.
    @ivar message: go-livepeer's error text, for the response body.
    """

    def __init__(self, status, message):
        Exception.__init__(self, message)
        self.status = status
        self.message = message


def decodePayment(header):
    """
    Decode a C{Livepeer-Payment} header value.

    @raise PaymentError: 402 for bad base64 or protobuf.
    """
    try:
        raw = base64.b64decode(header, validate=True)
    except (binascii.Error, ValueError) as e:
        raise PaymentError(402, f"base64 decode error: {e}") from None
    payment = lp_rpc_pb2.Payment()
    try:
        payment.ParseFromString(raw)
    except DecodeError as e:
        raise PaymentError(402, f"protobuf unmarshal error: {e}") from None
    return payment


@implementer(IPaymentProcessor)
class OffchainPayments:
    """
    Off-chain mode: every segment is free; a payment is only decoded (by the
    caller, with L{decodePayment}).
    """

    price = Fraction(0)

    def processPayment(self, payment, sessionId):
        """
        Accept any payment.
        """
        return succeed(None)

    def checkBalance(self, sessionId):
        """
        Nothing is owed off-chain.
        """

    def debit(self, sessionId, encodedPixels):
        """
        Nothing is owed off-chain.
        """

    def ticketParams(self, senderAddress):
        """
        No ticket parameters off-chain: fires with L{None}.
        """
        return succeed(None)
