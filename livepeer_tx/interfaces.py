# -*- test-case-name: tests.test_interfaces -*-
"""
The interfaces between the orchestrator's plain logic and its edges.

The dispatcher and the pool talk to a transcoder through its
L{ITranscoderLink} (a WebSocket connection of ours or a stock transcoder's
gRPC call); the segment service and C{GetOrchestrator} take payment through
an L{IPaymentProcessor} (off-chain or with tickets).
"""

from zope.interface import Attribute, Interface


class ITranscoderLink(Interface):
    """
    The edge that carries work to one registered transcoder
    (L{livepeer_tx.orchestrator.routing.RemoteTranscoder.link}).
    """

    def sendTask(taskId, job):
        """
        Send one segment to transcode; the result comes back through the
        dispatcher's C{taskSucceeded} or C{taskFailed}.

        @param taskId: the task's id (a L{str}).
        @param job: the L{livepeer_tx.orchestrator.dispatch.SegmentJob}:
            its segment whole in C{data}, or still arriving (C{arriving})
            when L{streamsJob} says the link takes it so.
        @raise Exception: the task cannot be sent; the dispatcher moves it
            to another transcoder.
        """

    def streamsJob(job):
        """
        Whether the link takes C{job} while its segment is still arriving
        (and forwards the bytes as they come); otherwise the dispatcher
        sends it once the segment is in.
        """

    def cancelTask(taskId):
        """
        The orchestrator gave up on C{taskId}: stop it if the transcoder can,
        and drop its late result.
        """

    def endSession(sessionId):
        """
        The session ended: the transcoder may free what it keeps for it.
        """

    def closeForShutdown():
        """
        Close the link because the orchestrator stops.

        @return: a L{Deferred} that fires once the link is closed.
        """

    def closeForStaleSecret():
        """
        Close the link because the secret the transcoder registered with is
        no longer valid (it may reconnect with the current one).
        """


class IPaymentProcessor(Interface):
    """
    What takes payment for segments and describes it to gateways.
    """

    price = Attribute("The price in wei per pixel (a L{fractions.Fraction}; 0 off-chain).")

    def processPayment(payment, sessionId):
        """
        Credit a session with a decoded C{Payment}.

        @param payment: an C{lp_rpc_pb2.Payment}, or L{None} when the
            segment carried none.
        @return: a L{Deferred} that fires once the payment is accepted, or
            fails with L{livepeer_tx.payments.PaymentError}.
        """

    def checkBalance(sessionId):
        """
        Check that the session may be served.

        @raise livepeer_tx.payments.PaymentError: its credit does not cover
            a segment.
        """

    def debit(sessionId, encodedPixels):
        """
        Charge a session for C{encodedPixels} encoded pixels.
        """

    def ticketParams(senderAddress):
        """
        Ticket parameters for a gateway's C{OrchestratorInfo}.

        @param senderAddress: the gateway's 20-byte address.
        @return: a L{Deferred} firing with C{lp_rpc_pb2.TicketParams} or
            L{None} (no tickets), or failing with
            L{livepeer_tx.payments.PaymentError}.
        """
