"""
Every implementation of the orchestrator's declared interfaces provides
them: a link or payment processor missing a method the dispatcher, the pool
or the segment service calls would fail here instead of mid-segment.
"""

from twisted.internet.task import Clock
from zope.interface.verify import verifyClass, verifyObject

from livepeer_tx.chain.payments import TicketPayments
from livepeer_tx.chain.watcher import ChainWatcher
from livepeer_tx.interfaces import IPaymentProcessor, ITranscoderLink
from livepeer_tx.orchestrator.grpctranscoders import GRPCTranscoderLink
from livepeer_tx.orchestrator.registration import TranscoderServerProtocol
from livepeer_tx.payments import OffchainPayments


def test_webSocketLinkProvidesITranscoderLink():
    """
    Our transcoders' WebSocket connection is a full transcoder link.
    """
    assert verifyClass(ITranscoderLink, TranscoderServerProtocol)
    assert verifyObject(ITranscoderLink, TranscoderServerProtocol())


def test_grpcLinkProvidesITranscoderLink():
    """
    A stock transcoder's C{RegisterTranscoder} call is a full transcoder link.
    """
    assert verifyObject(ITranscoderLink, GRPCTranscoderLink(service=None, call=None, address="192.0.2.1:4000"))


def test_offchainPaymentsProvideIPaymentProcessor():
    """
    The off-chain payment processor has every method and the price.
    """
    assert verifyObject(IPaymentProcessor, OffchainPayments())


def test_ticketPaymentsProvideIPaymentProcessor():
    """
    The ticket payment processor has every method and the price.
    """
    clock = Clock()
    payments = TicketPayments(None, None, ChainWatcher(clock, contracts=None), None, 1, reactor=clock)
    assert verifyObject(IPaymentProcessor, payments)
